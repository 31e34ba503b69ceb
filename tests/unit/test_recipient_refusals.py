"""admission.recipient_refusals and refused_details: a batch refused for its recipients names
every one and why (opt-out, then do-not-contact, then frequency), each once, bounded."""

from __future__ import annotations

from bridge.domain import admission as adm
from bridge.domain.admission import Facts, FrequencyRule, Rules, decide
from bridge.domain.frequency import MINUTE_MS, Limits

NOW = 1_796_000_400_000
NUMS = [f"+861380013{i:04d}" for i in range(3000)]


def _freq(numbers: list[str]) -> FrequencyRule:
    return FrequencyRule("raw", "Acme", None, Limits(0, 0, 1), "UTC", tuple(numbers))


def test_every_reason_each_recipient_once_in_precedence_order() -> None:
    to = tuple(NUMS[:6])
    facts = Facts(
        to,
        opted_out=frozenset({NUMS[4], NUMS[1]}),
        blocked=frozenset({NUMS[0], NUMS[1]}),
        history={NUMS[3]: [NOW - MINUTE_MS], NUMS[0]: [NOW - MINUTE_MS]},
    )
    rules = Rules(frequency=_freq(list(to)))
    found = adm.recipient_refusals(rules, facts, NOW)
    assert [(r.to, r.code) for r in found] == [
        (NUMS[1], "RECIPIENT_OPTED_OUT"),
        (NUMS[4], "RECIPIENT_OPTED_OUT"),
        (NUMS[0], "RECIPIENT_BLOCKED"),  # over the limit too: listed once, its first reason
        (NUMS[3], "FREQUENCY_LIMIT_DAY"),
    ]
    r = decide(rules, facts, NOW)
    assert isinstance(r, adm.Refusal)
    assert (r.code, r.message) == (
        "RECIPIENT_OPTED_OUT",
        f"to[1]: {NUMS[1]} has opted out of this account's messages",
    )
    assert r.retry_after is None  # the first one's, as before
    assert r.details is not None
    assert [(e["index"], e["code"]) for e in r.details["recipients"]] == [
        (0, "RECIPIENT_BLOCKED"),
        (1, "RECIPIENT_OPTED_OUT"),
        (3, "FREQUENCY_LIMIT_DAY"),
        (4, "RECIPIENT_OPTED_OUT"),
    ]
    (limited,) = [e for e in r.details["recipients"] if "retry_after" in e]
    assert limited["to"] == NUMS[3] and 1 <= limited["retry_after"] <= 86_400


def test_a_frequency_first_keeps_its_retry_after() -> None:
    facts = Facts((NUMS[0], NUMS[1]), history={NUMS[1]: [NOW - MINUTE_MS]})
    r = decide(Rules(frequency=_freq([NUMS[0], NUMS[1]])), facts, NOW)
    assert isinstance(r, adm.Refusal) and r.code == "FREQUENCY_LIMIT_DAY"
    assert r.retry_after is not None and r.retry_after > 0
    assert r.details == {
        "recipients": [
            {"index": 1, "to": NUMS[1], "code": "FREQUENCY_LIMIT_DAY", "retry_after": 86_340}
        ],
        "refused": 1,
        "truncated": False,
    }


def test_nothing_refused_nothing_listed() -> None:
    assert adm.recipient_refusals(Rules(), Facts(tuple(NUMS[:3])), NOW) == []
    assert isinstance(decide(Rules(), Facts(tuple(NUMS[:3])), NOW), adm.Plan)


def test_the_list_is_bounded_by_position() -> None:
    to = tuple(NUMS[:2500])
    facts = Facts(to, opted_out=frozenset(reversed(to)))
    r = decide(Rules(), facts, NOW)
    assert isinstance(r, adm.Refusal) and r.details is not None
    listed = r.details["recipients"]
    assert len(listed) == adm.MAX_LISTED_REFUSALS
    assert [e["index"] for e in listed] == list(range(adm.MAX_LISTED_REFUSALS))
    assert (r.details["refused"], r.details["truncated"]) == (2500, True)
