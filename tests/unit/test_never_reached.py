"""lifecycle.never_reached (which ended messages give back their daily-quota and frequency
places) and its SQL form STILL_COUNTS_SQL, which the engines' history reads use: the same rule."""

from __future__ import annotations

import itertools
import sqlite3

from bridge.domain import admission as adm
from bridge.domain import lifecycle as lc

STATES = sorted(lc.MSG_FINAL | {lc.MSG_QUEUED, lc.MSG_SENT})


def test_only_an_expired_message_never_tried_gives_back() -> None:
    assert lc.never_reached(lc.MSG_EXPIRED, 0, 0)
    assert not lc.never_reached(lc.MSG_EXPIRED, 1, 0)  # a part reached the SMSC
    assert not lc.never_reached(lc.MSG_EXPIRED, 0, 1)  # a submit never answered: maybe out
    assert not lc.never_reached(lc.MSG_FAILED, 0, 0)  # the carrier refused it: a failure
    assert not lc.never_reached(lc.MSG_QUEUED, 0, 0)  # not ended


def test_the_sql_form_is_the_same_rule() -> None:
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE messages (state TEXT, segments_sent INT, q_unanswered INT)")
    rows = list(itertools.product(STATES, (0, 1, 2), (0, 1)))
    c.executemany("INSERT INTO messages VALUES (?,?,?)", rows)
    kept = set(
        c.execute(
            "SELECT state, segments_sent, q_unanswered FROM messages WHERE "
            + lc.STILL_COUNTS_SQL.format(m="")
        )
    )
    assert kept == {r for r in rows if not lc.never_reached(*r)}


def test_places_go_back_to_the_day_of_acceptance_in_the_quota_zone() -> None:
    # 2026-11-30T15:59:59Z is 23:59:59 in Shanghai; a second later it is the next day there.
    late, early = 1_796_054_399_000, 1_796_054_400_000
    back = adm.quota_returns(
        [("a", late), ("a", early), ("a", early), ("b", late)], "Asia/Shanghai"
    )
    assert back == {("a", "2026-11-30"): 1, ("a", "2026-12-01"): 2, ("b", "2026-11-30"): 1}
    assert adm.quota_returns([("a", late), ("a", early)], "UTC") == {("a", "2026-11-30"): 2}


# -- /v1/stats buckets ----------------------------------------------------------------------------

CODES = (
    None,
    "CANCELED",
    "RECIPIENT_OPTED_OUT",
    "SENDER_NOT_ALLOWED",
    "VALIDITY_EXPIRED",
    "UNDELIV",
)


def test_stat_buckets() -> None:
    assert lc.stat_of(lc.MSG_EXPIRED, "CANCELED", 0, 0) == "canceled"
    assert lc.stat_of(lc.MSG_EXPIRED, "RECIPIENT_OPTED_OUT", 0, 0) == "withdrawn"
    assert lc.stat_of(lc.MSG_EXPIRED, "MARKETING_NOT_ALLOWED", 0, 0) == "withdrawn"
    assert lc.stat_of(lc.MSG_EXPIRED, "VALIDITY_EXPIRED", 0, 0) == "failed"  # as before
    assert lc.stat_of(lc.MSG_EXPIRED, "RECIPIENT_OPTED_OUT", 1, 0) == "failed"  # partly sent
    assert lc.stat_of(lc.MSG_EXPIRED, "RECIPIENT_OPTED_OUT", 0, 1) == "failed"  # maybe sent
    assert lc.stat_of(lc.MSG_FAILED, "ESME_RINVDSTADR", 0, 0) == "failed"
    assert lc.stat_of(lc.MSG_SENT, None, 1, 0) == "pending"


def test_each_row_is_in_exactly_the_bucket_stat_of_says() -> None:
    c = sqlite3.connect(":memory:")
    c.execute(
        "CREATE TABLE messages (state TEXT, error_code TEXT, segments_sent INT, q_unanswered INT)"
    )
    rows = list(itertools.product(STATES, CODES, (0, 1), (0, 1)))
    c.executemany("INSERT INTO messages VALUES (?,?,?,?)", rows)
    for bucket in lc.STAT_BUCKETS:
        got = set(
            c.execute(
                "SELECT state, error_code, segments_sent, q_unanswered FROM messages "
                f"WHERE {lc.STAT_SQL[bucket]}"
            )
        )
        assert got == {r for r in rows if lc.stat_of(*r) == bucket}, bucket
