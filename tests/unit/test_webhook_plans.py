"""The webhook sender's pure decisions: which POSTs start from a claim, and each report's retry."""

from __future__ import annotations

import random
from collections import Counter

from bridge.pipeline.webhooks import plan_chunks, retry_plan
from bridge.store.models import WebhookJob

MIN = 60_000
HOUR = 60 * MIN


def job(i: int, account: str, attempts: int = 0, created_at: int = 0) -> WebhookJob:
    return WebhookJob(i, f"wh_{i}", account, "status", f"http://{account}/h", "m", attempts,
                      created_at, lease=5)  # fmt: skip


def test_destinations_take_turns_within_free_slots_and_caps() -> None:
    jobs = [job(i, "big") for i in range(10)] + [job(10, "a"), job(11, "b")]
    start, spare = plan_chunks(jobs, batch_max=2, free=4, busy=Counter(), cap=2)
    # big first (its reports are oldest), then a and b, then big's second POST; big's cap is 2.
    assert [(d[0], [j.id for j in c]) for d, c in start] == [
        ("big", [0, 1]), ("a", [10]), ("b", [11]), ("big", [2, 3])
    ]  # fmt: skip
    assert [j.id for j in spare] == [4, 5, 6, 7, 8, 9]


def test_a_destination_at_its_cap_starts_nothing() -> None:
    jobs = [job(i, "big") for i in range(3)]
    busy = Counter({("big", "http://big/h", "status"): 1})
    start, spare = plan_chunks(jobs, batch_max=100, free=5, busy=busy, cap=1)
    assert start == [] and [j.id for j in spare] == [0, 1, 2]


def test_each_report_follows_its_own_schedule_and_age() -> None:
    rng = random.Random(1)
    now = 30 * HOUR
    fresh = job(1, "x", attempts=0, created_at=now - 1000)
    retried = job(2, "x", attempts=4, created_at=now - 2 * HOUR)
    expiring = job(3, "x", attempts=9, created_at=now - 24 * HOUR + MIN)
    plan = retry_plan([fresh, retried, expiring], now, True, (60, 300, 600, 1800, 3600),
                      24 * HOUR, rng)  # fmt: skip
    by_id = {i: (attempt, next_at, dead) for ids, attempt, next_at, dead in plan for i in ids}
    assert by_id[1][0] == 1 and not by_id[1][2] and 54_000 <= by_id[1][1] - now <= 66_000
    assert by_id[2][0] == 5 and not by_id[2][2] and by_id[2][1] - now >= 3_240_000
    assert by_id[3][2]  # its 24 h run out before its next hourly attempt
    assert retry_plan([fresh], now, False, (60,), 24 * HOUR, rng) == [([1], 1, now, True)]


def test_a_replayed_dead_letter_gets_a_whole_window_again() -> None:
    """Dead after a day-long outage, replayed by the operator: one more failure must schedule
    a retry from the replay, not dead-letter it again at once."""
    now = 50 * HOUR
    old = WebhookJob(1, "wh_1", "x", "status", "http://x/h", "m", 0, now - 30 * HOUR, lease=5,
                     retry_from=now - MIN)  # fmt: skip
    (plan,) = retry_plan([old], now, True, (60,), 24 * HOUR, random.Random(1))
    assert plan[0] == [1] and plan[3] is False
    unreplayed = WebhookJob(
        2, "wh_2", "x", "status", "http://x/h", "m", 0, now - 30 * HOUR, lease=5
    )
    (plan,) = retry_plan([unreplayed], now, True, (60,), 24 * HOUR, random.Random(1))
    assert plan[3] is True
