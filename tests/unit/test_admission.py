"""bridge/domain/admission.py: the decision at acceptance (order of checks, money, low balance,
refunds, the daily-quota day, frequency Retry-After)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm
from bridge.domain.admission import (
    DOMESTIC,
    Facts,
    FrequencyRule,
    Plan,
    Pocket,
    Priced,
    Refusal,
    Rules,
    apply_entries,
    balances_of,
    day_key,
    decide,
    refund_due,
    seconds_to_midnight,
)
from bridge.domain.frequency import DAY_MS, HOUR_MS, MINUTE_MS, Limits
from bridge.domain.ledger import (
    CARD_FACE_VALUES,
    Entry,
    EntryKind,
    InsufficientFunds,
    balances,
    card_purchase,
    expire_entries,
    grant_voucher,
    plan_charge,
    plan_refund,
    topup,
)

K = EntryKind
SH = "Asia/Shanghai"
CN1 = "+8613800138000"
CN2 = "+8613900139000"
CN3 = "+8613700137000"
US = "+12025550123"
PRICE = 45_000
VERIFY = Limits(1, 5, 10)


def at(tz: str, *args: int, fold: int = 0, ms: int = 0) -> int:
    """Epoch ms of a wall time in `tz`."""
    dt = datetime(*args, tzinfo=ZoneInfo(tz), fold=fold)  # type: ignore[misc]
    return int(dt.timestamp()) * 1000 + ms


def utc(*args: int, ms: int = 0) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1000 + ms  # type: ignore[misc]


NOW = at(SH, 2026, 11, 29, 13, 40, 15)  # a Sunday afternoon in Shanghai


def cash(amount: int) -> Pocket:
    return Pocket("cash", amount)


def voucher(vid: str, amount: int, expires_at: int | None) -> Pocket:
    return Pocket(f"voucher:{vid}", amount, expires_at)


def card(cid: str, amount: int, expires_at: int) -> Pocket:
    return Pocket(f"card:{cid}", amount, expires_at)


def charges(*amounts: int, intl: bool = False) -> tuple[Priced, ...]:
    return tuple(Priced(f"msg_{i}", a, intl) for i, a in enumerate(amounts))


def freq_rule(
    numbers: Sequence[str], limits: Limits = VERIFY, tz: str = SH, kind: str = "verification"
) -> FrequencyRule:
    return FrequencyRule(kind, "Acme", None, limits, tz, tuple(numbers))


def money_rules(*priced: Priced, tz: str = SH) -> Rules:
    return Rules(charges=tuple(priced), billing=True, tz=tz)


def money_facts(
    pockets: Sequence[Pocket],
    recipients: Sequence[str] | None = None,
    *,
    kind: str = "prepaid",
    threshold: int = 0,
    n: int = 1,
) -> Facts:
    rcpts = tuple(recipients) if recipients is not None else (CN1, CN2, CN3)[:n]
    return Facts(
        recipients=rcpts,
        account_kind=kind,
        low_balance_threshold=threshold,
        pockets=tuple(pockets),
    )


def plan_of(result: Refusal | Plan) -> Plan:
    assert isinstance(result, Plan), result
    return result


def refusal_of(result: Refusal | Plan) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def entries_of(plan: Plan) -> list[tuple[str, str, int, str]]:
    """(message id, kind, amount, pocket) of every planned entry, in order."""
    return [(mid, str(e.kind), e.amount, e.pocket) for mid, e in plan.entries]


# ==== the order of the checks =====================================================================

# Each check, and how to make a request fail it. Applied in any combination, the refusal must be
# the first failing one in this order.
CHECKS = ("sign", "template", "optout", "dnc", "frequency", "quota", "balance")
CODES = {
    "sign": "SIGN_NAME_NOT_APPROVED",
    "template": "TEMPLATE_NOT_APPROVED",
    "optout": "RECIPIENT_OPTED_OUT",
    "dnc": "RECIPIENT_BLOCKED",
    "frequency": "FREQUENCY_LIMIT_MINUTE",
    "quota": "DAILY_QUOTA_EXCEEDED",
    "balance": "INSUFFICIENT_BALANCE",
}


def scenario(failing: frozenset[str]) -> tuple[Rules, Facts]:
    recipients = (CN1, CN2)
    rules = Rules(
        sign_name="Acme",
        template_code="SMS_1",
        frequency=freq_rule(recipients),
        charges=charges(PRICE, PRICE),
        billing=True,
        tz=SH,
    )
    facts = Facts(
        recipients=recipients,
        sign_status="pending" if "sign" in failing else "approved",
        template_status="pending" if "template" in failing else "approved",
        opted_out=frozenset({CN2}) if "optout" in failing else frozenset(),
        blocked=frozenset({CN2}) if "dnc" in failing else frozenset(),
        history={CN2: [NOW - 1_000]} if "frequency" in failing else {},
        day_count=9 if "quota" in failing else 0,
        daily_quota=10,
        pockets=(cash(2 * PRICE - 1 if "balance" in failing else 2 * PRICE),),
    )
    return rules, facts


def test_a_request_failing_every_check_gets_each_refusal_in_order() -> None:
    failing = set(CHECKS)
    seen = []
    for check in CHECKS:
        rules, facts = scenario(frozenset(failing))
        seen.append(refusal_of(decide(rules, facts, NOW)).code)
        failing.discard(check)
    assert seen == [CODES[c] for c in CHECKS]
    rules, facts = scenario(frozenset())
    plan = plan_of(decide(rules, facts, NOW))
    assert [(m, a) for m, _k, a, _p in entries_of(plan)] == [("msg_0", -PRICE), ("msg_1", -PRICE)]


@given(st.sets(st.sampled_from(CHECKS), min_size=1))
@settings(max_examples=200, deadline=None)
def test_any_combination_of_failures_gets_the_first_in_order(failing: set[str]) -> None:
    rules, facts = scenario(frozenset(failing))
    first = next(c for c in CHECKS if c in failing)
    assert refusal_of(decide(rules, facts, NOW)).code == CODES[first]


def test_every_subset_of_failures_exhaustively() -> None:
    for r in range(1, len(CHECKS) + 1):
        for combo in itertools.combinations(CHECKS, r):
            rules, facts = scenario(frozenset(combo))
            assert refusal_of(decide(rules, facts, NOW)).code == CODES[combo[0]], combo


# ==== sign and template ===========================================================================


@pytest.mark.parametrize(
    ("status", "shown"),
    [(None, "not registered"), ("pending", "pending"), ("rejected", "rejected")],
)
def test_sign_must_be_approved(status: str | None, shown: str) -> None:
    r = refusal_of(
        decide(Rules(sign_name="Globex"), Facts(recipients=(CN1,), sign_status=status), NOW)
    )
    assert r.code == "SIGN_NAME_NOT_APPROVED"
    assert r.message.startswith("sign_name: 'Globex' is " + shown)
    assert r.retry_after is None


def test_no_sign_name_in_the_request_is_not_checked_here() -> None:
    # Raw text without a sign: the API decides whether that is allowed; admission has no sign rule.
    assert decide(Rules(), Facts(recipients=(CN1,), sign_status=None), NOW) == Plan(
        (), None, day_key(NOW, "UTC")
    )


def test_every_sign_of_a_batch_must_be_approved_first_sign_first() -> None:
    rules = Rules(sign_name="Acme", more_signs=("Beta", "Gamma"))
    facts = Facts(
        (CN1, CN2, CN3),
        sign_status="approved",
        more_sign_status={"Beta": None, "Gamma": "rejected"},
    )
    r = refusal_of(decide(rules, facts, NOW))
    assert r.code == "SIGN_NAME_NOT_APPROVED"
    assert r.message.startswith("sign_name: 'Beta' is not registered")
    facts = Facts(
        (CN1, CN2, CN3), sign_status="pending", more_sign_status={"Beta": None, "Gamma": None}
    )
    assert refusal_of(decide(rules, facts, NOW)).message.startswith("sign_name: 'Acme' is pending")
    ok = Facts(
        (CN1, CN2, CN3),
        sign_status="approved",
        more_sign_status={"Beta": "approved", "Gamma": "approved"},
    )
    assert isinstance(decide(rules, ok, NOW), Plan)


def test_template_unknown_and_unapproved() -> None:
    rules = Rules(sign_name="Acme", template_code="SMS_9")
    unknown = refusal_of(
        decide(rules, Facts((CN1,), sign_status="approved", template_status=None), NOW)
    )
    assert (unknown.code, unknown.message) == (
        "TEMPLATE_NOT_FOUND",
        "template: 'SMS_9' is not known",
    )
    for status in ("pending", "rejected"):
        r = refusal_of(
            decide(rules, Facts((CN1,), sign_status="approved", template_status=status), NOW)
        )
        assert r.code == "TEMPLATE_NOT_APPROVED"
        assert r.message.startswith(f"template: 'SMS_9' is {status};")
    assert isinstance(
        decide(rules, Facts((CN1,), sign_status="approved", template_status="approved"), NOW), Plan
    )


# ==== recipients: opt-out and do-not-contact; `to` vs `to[i]` =====================================


def test_opted_out_single_recipient_is_named_to() -> None:
    r = refusal_of(decide(Rules(), Facts((CN1,), opted_out=frozenset({CN1})), NOW))
    assert r.code == "RECIPIENT_OPTED_OUT"
    assert r.message == f"to: {CN1} has opted out of this account's messages"


def test_opted_out_in_a_list_names_the_first_index() -> None:
    facts = Facts((CN1, CN2, CN3), opted_out=frozenset({CN3, CN2}))
    r = refusal_of(decide(Rules(), facts, NOW))
    assert r.message == f"to[1]: {CN2} has opted out of this account's messages"


def test_blocked_single_and_list() -> None:
    r = refusal_of(decide(Rules(), Facts((CN1,), blocked=frozenset({CN1})), NOW))
    assert (r.code, r.message) == ("RECIPIENT_BLOCKED", f"to: {CN1} is on a do-not-contact list")
    r = refusal_of(decide(Rules(), Facts((CN1, CN2, CN3), blocked=frozenset({CN3})), NOW))
    assert r.message == f"to[2]: {CN3} is on a do-not-contact list"


def test_a_list_of_one_is_still_named_to() -> None:
    # `to: ["+86..."]` and `to: "+86..."` reach admission the same way (one recipient).
    r = refusal_of(decide(Rules(), Facts((CN1,), blocked=frozenset({CN1})), NOW))
    assert r.message.startswith("to: ")


def test_opt_out_is_checked_for_all_recipients_before_dnc() -> None:
    # The blocked number comes first in the list, the opted-out one last: opt-out still wins.
    facts = Facts((CN1, CN2), opted_out=frozenset({CN2}), blocked=frozenset({CN1}))
    r = refusal_of(decide(Rules(), facts, NOW))
    assert (r.code, r.message.split(":")[0]) == ("RECIPIENT_OPTED_OUT", "to[1]")


# ==== frequency ===================================================================================


def test_frequency_refusal_names_the_window_the_field_and_the_number() -> None:
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: [NOW - 5_000]}), NOW))
    assert r.code == "FREQUENCY_LIMIT_MINUTE"
    assert r.message == f"to ({CN1}): at most 1 message per clock minute to this number"
    rules = Rules(frequency=freq_rule((CN1, CN2, CN3)))
    facts = Facts((CN1, CN2, CN3), history={CN3: [NOW - 5_000]})
    r = refusal_of(decide(rules, facts, NOW))
    assert r.message == f"to[2] ({CN3}): at most 1 message per clock minute to this number"


def test_exempt_numbers_are_left_out_of_the_rule() -> None:
    # The API leaves exempt numbers out of `numbers`: their history does not matter.
    rules = Rules(frequency=freq_rule((CN2,)))
    facts = Facts((CN1, CN2), history={CN1: [NOW - 1_000] * 20})
    assert isinstance(decide(rules, facts, NOW), Plan)


def test_minute_retry_after_is_the_rest_of_the_clock_minute() -> None:
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: [NOW - 10_000]}), NOW))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_MINUTE", 45.0)  # 13:40:15 -> 13:41:00


def test_minute_retry_after_is_at_least_one_second() -> None:
    now = at(SH, 2026, 11, 29, 13, 40, 59, ms=500)
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: [now - 100]}), now))
    assert r.retry_after == 1.0


def test_minute_retry_after_waits_out_a_send_dated_after_now() -> None:
    # The clock stepped back 10 minutes after the send: it counts in every minute window until
    # its own minute has passed, so the hint is the end of that minute, not of this one.
    rules = Rules(frequency=freq_rule((CN1,)))
    sent = NOW + 10 * 60_000  # 13:50:15
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: [sent]}), NOW))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_MINUTE", 10 * 60 + 45.0)
    assert isinstance(decide(rules, Facts((CN1,), history={CN1: [sent]}), NOW + 645_000), Plan)
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: [sent]}), NOW + 644_999))
    assert r.code == "FREQUENCY_LIMIT_MINUTE"


def test_hour_retry_after_waits_out_sends_dated_after_now() -> None:
    # Five sends dated 14:10-14:14 (the clock has stepped back since): one more fits at 15:00,
    # when they have left the hour window (13:01 leaving at 14:00 is not enough).
    sent = [at(SH, 2026, 11, 29, 14, m) for m in (10, 11, 12, 13, 14)] + [
        at(SH, 2026, 11, 29, 13, 1)
    ]
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    # Refused by the narrowest window (14:14 is in every minute until 14:15); the hint is when
    # every window has room: 15:00.
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_MINUTE", 60 * 60 + 19 * 60 + 45.0)
    after = NOW + int(r.retry_after * 1000)
    assert isinstance(decide(rules, Facts((CN1,), history={CN1: sent}), after), Plan)


def test_a_minute_refusal_with_the_hour_full_too_hints_the_next_hour() -> None:
    # 13:40:05 fills this minute, the five sends fill this hour: retrying at 13:41 would be
    # refused again (by the hour).
    sent = [at(SH, 2026, 11, 29, 13, m) for m in (1, 5, 10, 20)] + [NOW - 10_000]
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_MINUTE", 19 * 60 + 45.0)


def test_hour_retry_after_is_the_rest_of_the_clock_hour() -> None:
    # Five sends earlier in this clock hour, none in this minute.
    sent = [at(SH, 2026, 11, 29, 13, m) for m in (1, 5, 10, 20, 30)]
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert r.code == "FREQUENCY_LIMIT_HOUR"
    assert r.retry_after == 19 * 60 + 45  # 13:40:15 -> 14:00:00
    assert "at most 5 messages per clock hour" in r.message


def test_hour_retry_after_in_a_half_hour_zone() -> None:
    tz = "Asia/Kolkata"
    now = at(tz, 2026, 5, 4, 10, 15)
    sent = [at(tz, 2026, 5, 4, 10, m) for m in (0, 2, 4, 6, 8)]
    rules = Rules(frequency=freq_rule((CN1,), tz=tz))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), now))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_HOUR", 45 * 60.0)


def test_hour_window_in_the_repeated_hour_after_dst_ends() -> None:
    tz = "America/New_York"  # 2026-11-01 02:00 EDT -> 01:00 EST: 01:xx happens twice
    now = at(tz, 2026, 11, 1, 1, 30, fold=1)  # 01:30 EST = 06:30Z
    first_hour = [at(tz, 2026, 11, 1, 1, m, fold=0) for m in (0, 10, 20, 30, 40)]  # EDT
    rules = Rules(frequency=freq_rule((CN1,), tz=tz))
    # Five sends in the *first* 01:xx are another clock hour: not counted by the hour window.
    assert isinstance(decide(rules, Facts((CN1,), history={CN1: first_hour}), now), Plan)
    second_hour = [at(tz, 2026, 11, 1, 1, m, fold=1) for m in (0, 5, 10, 15, 20)]  # EST
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: second_hour}), now))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_HOUR", 1800.0)


def test_day_retry_after_is_when_the_oldest_counted_send_leaves_the_24_hours() -> None:
    # Ten sends in the last 24 h, none in this clock hour; the oldest 23 h ago.
    sent = [NOW - 23 * HOUR_MS + i * HOUR_MS for i in range(10)]
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert r.code == "FREQUENCY_LIMIT_DAY"
    assert r.retry_after == 3600.0
    assert "at most 10 messages in 24 hours" in r.message


def test_day_retry_after_ignores_a_send_exactly_24_hours_ago() -> None:
    sent = [NOW - DAY_MS] + [NOW - 20 * HOUR_MS + i * HOUR_MS for i in range(10)]
    rules = Rules(frequency=freq_rule((CN1,)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_DAY", 4 * 3600.0)


def test_day_retry_after_when_already_over_the_limit() -> None:
    # Twelve counted (a limit lowered by the operator): room for one more only when three left.
    sent = [NOW - 23 * HOUR_MS + i * HOUR_MS for i in range(12)]
    rules = Rules(frequency=freq_rule((CN1,), limits=Limits(0, 0, 10)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert (r.code, r.retry_after) == ("FREQUENCY_LIMIT_DAY", 3 * 3600.0)


def test_day_retry_after_is_honest_a_send_at_that_time_passes() -> None:
    sent = [NOW - 23 * HOUR_MS + i * 37 * MINUTE_MS for i in range(10)]
    rules = Rules(frequency=freq_rule((CN1,), limits=Limits(0, 0, 10)))
    r = refusal_of(decide(rules, Facts((CN1,), history={CN1: sent}), NOW))
    assert r.retry_after is not None
    later = NOW + int(r.retry_after * 1000)
    assert isinstance(decide(rules, Facts((CN1,), history={CN1: sent}), later), Plan)
    assert isinstance(decide(rules, Facts((CN1,), history={CN1: sent}), later - 1), Refusal)


# ==== daily quota =================================================================================


def test_daily_quota_exact_fill_passes_one_over_is_refused() -> None:
    facts = Facts((CN1, CN2), day_count=8, daily_quota=10)
    assert plan_of(decide(Rules(tz=SH), facts, NOW)).day == "2026-11-29"
    facts = Facts((CN1, CN2, CN3), day_count=8, daily_quota=10)
    r = refusal_of(decide(Rules(tz=SH), facts, NOW))
    assert r.code == "DAILY_QUOTA_EXCEEDED"
    assert r.message == "to: 3 message(s) would pass the daily quota of 10 (2 left today)"
    assert r.retry_after == seconds_to_midnight(NOW, SH) == 10 * 3600 + 19 * 60 + 45


def test_daily_quota_zero_is_unlimited_and_left_never_negative() -> None:
    assert isinstance(decide(Rules(), Facts((CN1,), day_count=10**9, daily_quota=0), NOW), Plan)
    r = refusal_of(decide(Rules(), Facts((CN1,), day_count=15, daily_quota=10), NOW))
    assert "(0 left today)" in r.message


def test_the_plan_counts_in_the_local_day() -> None:
    late = at(SH, 2026, 11, 29, 23, 59, 59)
    assert plan_of(decide(Rules(tz=SH), Facts((CN1,)), late)).day == "2026-11-29"
    assert plan_of(decide(Rules(tz=SH), Facts((CN1,)), late + 1000)).day == "2026-11-30"
    assert plan_of(decide(Rules(tz="UTC"), Facts((CN1,)), late + 1000)).day == "2026-11-29"


# ==== balance =====================================================================================


def test_billing_off_or_nothing_to_charge_plans_no_entries() -> None:
    pockets = (cash(0),)
    assert plan_of(decide(Rules(charges=charges(PRICE)), money_facts(pockets), NOW)).entries == ()
    assert plan_of(decide(Rules(billing=True), money_facts(pockets), NOW)).entries == ()


def test_exactly_affordable_batch_passes() -> None:
    rules = money_rules(*charges(PRICE, PRICE, PRICE))
    plan = plan_of(decide(rules, money_facts([cash(3 * PRICE)], n=3), NOW))
    assert entries_of(plan) == [(f"msg_{i}", "charge", -PRICE, "cash") for i in range(3)]
    assert all(e.at == NOW and e.ref == mid for mid, e in plan.entries)


def test_one_micro_short_refuses_the_whole_batch() -> None:
    rules = money_rules(*charges(PRICE, PRICE, PRICE))
    r = refusal_of(decide(rules, money_facts([cash(3 * PRICE - 1)], n=3), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"
    assert r.message == "balance: 0.135 CNY needed for 3 message(s), 0.134999 available"
    assert r.retry_after is None


def test_insufficient_balance_reports_what_was_available_before_the_batch() -> None:
    rules = money_rules(*charges(PRICE, PRICE))
    facts = money_facts([cash(30_000), voucher("v", 20_000, NOW + DAY_MS)], n=2)
    r = refusal_of(decide(rules, facts, NOW))
    assert r.message == "balance: 0.09 CNY needed for 2 message(s), 0.05 available"


def test_vouchers_before_cash() -> None:
    rules = money_rules(*charges(PRICE, PRICE))
    facts = money_facts([cash(100_000), voucher("v", 50_000, NOW + DAY_MS)], n=2)
    plan = plan_of(decide(rules, facts, NOW))
    assert entries_of(plan) == [
        ("msg_0", "voucher_spend", -PRICE, "voucher:v"),
        ("msg_1", "voucher_spend", -5_000, "voucher:v"),
        ("msg_1", "charge", -40_000, "cash"),
    ]
    spends = [e for _m, e in plan.entries if e.kind == K.VOUCHER_SPEND]
    assert {e.expires_at for e in spends} == {NOW + DAY_MS}  # so a refund knows the expiry


def test_earliest_expiring_voucher_first_never_expiring_last() -> None:
    pockets = [
        voucher("never", 100_000, None),
        voucher("late", 30_000, NOW + 2 * DAY_MS),
        voucher("soon", 30_000, NOW + DAY_MS),
        cash(1_000_000),
    ]
    plan = plan_of(decide(money_rules(*charges(PRICE, PRICE)), money_facts(pockets, n=2), NOW))
    assert entries_of(plan) == [
        ("msg_0", "voucher_spend", -30_000, "voucher:soon"),
        ("msg_0", "voucher_spend", -15_000, "voucher:late"),
        ("msg_1", "voucher_spend", -15_000, "voucher:late"),
        ("msg_1", "voucher_spend", -30_000, "voucher:never"),
    ]


def test_a_voucher_is_void_at_its_expiry_instant() -> None:
    pockets = [voucher("v", 100_000, NOW), cash(PRICE)]
    plan = plan_of(decide(money_rules(*charges(PRICE)), money_facts(pockets), NOW))
    # Charged to cash; the expired remainder written off (once, dated at the expiry instant).
    assert entries_of(plan) == [
        ("msg_0", "charge", -PRICE, "cash"),
        ("", "voucher_expire", -100_000, "voucher:v"),
    ]
    assert plan.entries[1][1].at == NOW
    # One millisecond earlier it is still valid and spent first.
    plan = plan_of(decide(money_rules(*charges(PRICE)), money_facts(pockets), NOW - 1))
    assert entries_of(plan) == [("msg_0", "voucher_spend", -PRICE, "voucher:v")]
    # An expired voucher does not make an unaffordable batch affordable.
    r = refusal_of(decide(money_rules(*charges(PRICE, PRICE)), money_facts(pockets, n=2), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"


def test_cards_pay_only_international_traffic() -> None:
    pockets = [card("c", 999_000_000, NOW + 365 * DAY_MS)]
    r = refusal_of(decide(money_rules(*charges(PRICE)), money_facts(pockets), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"
    assert r.message.endswith(", 0.00 available")
    plan = plan_of(
        decide(money_rules(*charges(50_000, intl=True)), money_facts(pockets, [US]), NOW)
    )
    assert entries_of(plan) == [("msg_0", "card_spend", -50_000, "card:c")]


def test_international_spends_vouchers_then_cards_then_cash() -> None:
    pockets = [
        cash(1_000_000),
        card("c", 30_000, NOW + DAY_MS),
        voucher("v", 10_000, NOW + 3 * DAY_MS),
    ]
    plan = plan_of(
        decide(money_rules(*charges(50_000, intl=True)), money_facts(pockets, [US]), NOW)
    )
    assert entries_of(plan) == [
        ("msg_0", "voucher_spend", -10_000, "voucher:v"),
        ("msg_0", "card_spend", -30_000, "card:c"),
        ("msg_0", "charge", -10_000, "cash"),
    ]


def test_mixed_batch_cards_never_pay_the_domestic_message() -> None:
    pockets = [card("c", 100_000, NOW + DAY_MS), cash(PRICE)]
    both = (Priced("msg_d", PRICE, False), Priced("msg_i", 50_000, True))
    plan = plan_of(decide(money_rules(*both), money_facts(pockets, [CN1, US]), NOW))
    assert entries_of(plan) == [
        ("msg_d", "charge", -PRICE, "cash"),
        ("msg_i", "card_spend", -50_000, "card:c"),
    ]
    r = refusal_of(
        decide(money_rules(*both), money_facts([card("c", 200_000, NOW + DAY_MS)], [CN1, US]), NOW)
    )
    assert r.code == "INSUFFICIENT_BALANCE"


def test_postpaid_domestic_accrues_without_touching_the_balance() -> None:
    """Postpaid domestic traffic is invoiced at the month's tier price: nothing is taken from
    cash or vouchers at acceptance, whatever the balance (even in debt or empty)."""
    rules = money_rules(*charges(PRICE, PRICE))
    for pockets in ([], [cash(-10 * PRICE)], [voucher("v", 50_000, None)], [cash(PRICE)]):
        plan = plan_of(decide(rules, money_facts(pockets, kind="postpaid", n=2), NOW))
        assert plan.entries == ()
        assert plan.low_balance is None


def test_one_recipient_send_plans_as_a_batch_of_one() -> None:
    """A single charge takes its own path (nothing sorted or summed, h11): the same plans and
    refusals, to the unit, as the batch path gives its charges."""
    one = money_rules(*charges(PRICE))
    for pockets in ([], [cash(-10 * PRICE)], [cash(PRICE)]):
        plan = plan_of(decide(one, money_facts(pockets, kind="postpaid"), NOW))
        assert (plan.entries, plan.low_balance) == ((), None)
    r = refusal_of(decide(one, money_facts([cash(PRICE - 1)]), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"
    assert r.message == "balance: 0.045 CNY needed for 1 message(s), 0.044999 available"
    plan = plan_of(decide(one, money_facts([cash(PRICE), voucher("v", 1, None)]), NOW))
    assert entries_of(plan) == [
        ("msg_0", "voucher_spend", -1, "voucher:v"),
        ("msg_0", "charge", -(PRICE - 1), "cash"),
    ]


def test_postpaid_international_needs_funds() -> None:
    intl = money_rules(*charges(50_000, intl=True))
    r = refusal_of(decide(intl, money_facts([], [US], kind="postpaid"), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"
    r = refusal_of(decide(intl, money_facts([cash(49_999)], [US], kind="postpaid"), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"
    plan = plan_of(decide(intl, money_facts([cash(50_000)], [US], kind="postpaid"), NOW))
    assert entries_of(plan) == [("msg_0", "charge", -50_000, "cash")]
    # A postpaid debt is not funds: domestic accrual never makes room for international traffic.
    r = refusal_of(decide(intl, money_facts([cash(-PRICE)], [US], kind="postpaid"), NOW))
    assert r.code == "INSUFFICIENT_BALANCE"


def test_postpaid_mixed_batch_answer_does_not_depend_on_recipient_order() -> None:
    # One batch to a domestic and an international number, postpaid, cash enough for the
    # international pre-charge only. The order of `to` must not decide whether it is accepted.
    dom, intl = Priced("msg_d", PRICE, False), Priced("msg_i", 50_000, True)
    answers = {
        order: type(decide(money_rules(*batch), money_facts([cash(50_000)], rcpts,
                                                            kind="postpaid"), NOW)).__name__
        for order, batch, rcpts in (
            ("intl-first", (intl, dom), [US, CN1]),
            ("domestic-first", (dom, intl), [CN1, US]),
        )
    }  # fmt: skip
    assert answers["intl-first"] == answers["domestic-first"], answers


def test_the_plan_leaves_every_pocket_non_negative_for_prepaid() -> None:
    pockets = [cash(100_000), voucher("a", 20_000, NOW + DAY_MS), card("c", 40_000, NOW + DAY_MS)]
    both = (Priced("m1", PRICE, False), Priced("m2", 50_000, True), Priced("m3", 30_000, True))
    plan = plan_of(decide(money_rules(*both), money_facts(pockets, [CN1, US, "+4420"]), NOW))
    after = apply_entries({p.pocket: p for p in pockets}, [e for _m, e in plan.entries])
    assert all(p.amount >= 0 for p in after.values())
    assert sum(p.amount for p in after.values()) == 160_000 - 125_000


# ==== low balance =================================================================================


def test_a_voucher_expiry_that_took_the_balance_under_warns_at_the_next_send_once() -> None:
    """The expiry itself is no send, so no send "crossed" the threshold: the account went from
    above it to 402 with no warning. The next send counts the lapsed remainder as the balance
    before, warns, and writes it off, so the send after it is silent."""
    rules = money_rules(*charges(PRICE))
    thr = 100_000
    lapsed = [voucher("v", 1_000_000, NOW - 1), cash(100_000)]
    plan = plan_of(decide(rules, money_facts(lapsed, threshold=thr), NOW))
    assert plan.low_balance == (1_100_000, 100_000 - PRICE)
    assert ("", "voucher_expire", -1_000_000, "voucher:v") in entries_of(plan)
    written_off = [voucher("v", 0, NOW - 1), cash(100_000 - PRICE)]
    warned = replace(money_facts(written_off, threshold=thr), low_warned=True)  # marked by it
    assert plan_of(decide(rules, warned, NOW)).low_balance is None
    # An expired voucher whose remainder leaves the balance above the threshold: no warning.
    plenty = [voucher("v", 1_000_000, NOW - 1), cash(500_000)]
    assert plan_of(decide(rules, money_facts(plenty, threshold=thr), NOW)).low_balance is None


def test_low_balance_crossing_values() -> None:
    rules = money_rules(*charges(PRICE))
    thr = 100_000
    assert plan_of(decide(rules, money_facts([cash(120_000)], threshold=thr), NOW)).low_balance == (
        120_000,
        75_000,
    )
    # Landing exactly on the threshold is not below it.
    assert (
        plan_of(decide(rules, money_facts([cash(145_000)], threshold=thr), NOW)).low_balance is None
    )
    # From exactly the threshold downwards is a crossing.
    assert plan_of(decide(rules, money_facts([cash(100_000)], threshold=thr), NOW)).low_balance == (
        100_000,
        55_000,
    )
    # Already below and warned for this dip: silent.
    below = replace(money_facts([cash(99_999)], threshold=thr), low_warned=True)
    assert plan_of(decide(rules, below, NOW)).low_balance is None
    # Threshold 0: never.
    assert plan_of(decide(rules, money_facts([cash(PRICE)], threshold=0), NOW)).low_balance is None


def test_an_account_never_above_its_threshold_is_warned_at_its_first_charge_once() -> None:
    """Created below its threshold (or the threshold raised over it, or topped up to a level
    still under it): no charge ever crossed, so no warning ever fired, however low it went."""
    rules = money_rules(*charges(PRICE))
    fresh = money_facts([cash(90_000)], threshold=100_000)
    assert plan_of(decide(rules, fresh, NOW)).low_balance == (90_000, 90_000 - PRICE)
    warned = replace(fresh, low_warned=True)  # what the warning's transaction leaves
    assert plan_of(decide(rules, warned, NOW)).low_balance is None
    # A crossing warns whatever the mark says (a balance at/above the threshold ended the dip).
    above = replace(money_facts([cash(120_000)], threshold=100_000), low_warned=True)
    assert plan_of(decide(rules, above, NOW)).low_balance == (120_000, 75_000)


def test_a_send_that_moves_no_money_does_not_warn() -> None:
    # Postpaid domestic traffic is not charged at sending: the balance did not move.
    facts = money_facts([cash(10_000)], kind="postpaid", threshold=100_000)
    assert plan_of(decide(money_rules(*charges(PRICE)), facts, NOW)).low_balance is None


def test_a_lapse_below_the_threshold_warns_once_per_dip() -> None:
    pockets = [voucher("v", 5_000, NOW - 1), cash(20_000)]
    entries, low = adm.lapse_plan(pockets, 100_000, NOW)
    assert entries and low == (25_000, 20_000)  # never above: the expiry warns
    assert adm.lapse_plan(pockets, 100_000, NOW, warned=True)[1] is None


def test_the_mark_moves_on_with_an_accept_sharing_the_statement() -> None:
    rules = money_rules(*charges(PRICE))
    facts = money_facts([cash(90_000)], threshold=100_000)
    plan = plan_of(decide(rules, facts, NOW))
    later = adm.facts_after(facts, plan, 1, (), rules, NOW)
    assert later.low_warned and plan_of(decide(rules, later, NOW)).low_balance is None
    quiet = adm.facts_after(facts, replace(plan, low_balance=None), 1, (), rules, NOW)
    assert not quiet.low_warned


def test_a_credit_rearms_only_at_or_above_the_threshold() -> None:
    assert not adm.rearms_low_balance([cash(99_999)], 100_000, NOW)
    assert adm.rearms_low_balance([cash(50_000), voucher("v", 50_000, None)], 100_000, NOW)
    # An expired voucher's remainder is no balance.
    assert not adm.rearms_low_balance([cash(50_000), voucher("v", 50_000, NOW)], 100_000, NOW)


def test_low_balance_counts_vouchers_and_reports_the_whole_batch() -> None:
    rules = money_rules(*charges(PRICE, PRICE, PRICE))
    facts = money_facts([cash(100_000), voucher("v", 100_000, None)], threshold=100_000, n=3)
    plan = plan_of(decide(rules, facts, NOW))
    assert plan.low_balance == (200_000, 65_000)  # one report for the batch, before/after it


def test_low_balance_ignores_international_paid_by_card() -> None:
    pockets = [cash(150_000), card("c", 999_000_000, NOW + DAY_MS)]
    rules = money_rules(*charges(50_000, intl=True))
    plan = plan_of(decide(rules, money_facts(pockets, [US], threshold=100_000), NOW))
    assert plan.low_balance is None


def test_refused_batch_reports_no_low_balance() -> None:
    rules = money_rules(*charges(PRICE, PRICE))
    r = decide(rules, money_facts([cash(PRICE)], threshold=100_000, n=2), NOW)
    assert isinstance(r, Refusal)


@st.composite
def money_script(draw: st.DrawFn) -> list[tuple[str, int]]:
    ops = st.one_of(
        st.tuples(st.just("send"), st.integers(1, 4)),
        st.tuples(st.just("topup"), st.integers(1, 400_000)),
        st.tuples(st.just("refund"), st.integers(0, 50)),
    )
    return draw(st.lists(ops, min_size=1, max_size=40))


@given(
    start=st.integers(0, 600_000),
    threshold=st.integers(1, 300_000),
    postpaid=st.booleans(),
    script=money_script(),
)
@settings(max_examples=300, deadline=None)
def test_low_balance_fires_once_per_dip(
    start: int, threshold: int, postpaid: bool, script: list[tuple[str, int]]
) -> None:
    """Whatever the start (above the threshold or never), the first charge that leaves the
    balance below it warns, and no other until the balance was back at or above it. The
    account's mark is kept as the engines keep it: set by a warning, cleared by a balance at
    or above the threshold."""
    kind = "postpaid" if postpaid else "prepaid"
    pockets: dict[str, Pocket] = {"cash": cash(start)}
    ledger: list[Entry] = [*topup(start, NOW)] if start else []
    charged: list[str] = []
    warned = False
    for step, (op, arg) in enumerate(script):
        before = balances_of(pockets.values(), NOW).available_domestic
        if op == "send":
            batch = tuple(Priced(f"m{step}_{i}", PRICE, False) for i in range(arg))
            recipients = tuple(f"+86138{step:05d}{i:03d}" for i in range(arg))
            out = decide(
                money_rules(*batch), replace(money_facts(list(pockets.values()), recipients,
                                                         kind=kind, threshold=threshold),
                                             low_warned=warned), NOW,
            )  # fmt: skip
            if isinstance(out, Refusal):
                assert out.code == "INSUFFICIENT_BALANCE" and not postpaid
                continue
            new = [e for _m, e in out.entries]
            pockets = apply_entries(pockets, new)
            ledger += new
            charged += [m.message_id for m in batch]
            after = balances_of(pockets.values(), NOW).available_domestic
            due = bool(new) and after < threshold and not warned
            assert (out.low_balance is not None) == due
            if out.low_balance is not None:
                assert out.low_balance == (before, after)
                warned = True
        elif op == "topup":
            new = topup(arg, NOW)
            pockets = apply_entries(pockets, new)
            ledger += new
        elif charged:
            mid = charged.pop(arg % len(charged))
            new = plan_refund([e for e in ledger if e.ref == mid], NOW, mid)
            pockets = apply_entries(pockets, new)
            ledger += new
        if balances_of(pockets.values(), NOW).available_domestic >= threshold:
            warned = False


# ==== balances_of and apply_entries ===============================================================


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[list[Entry], list[int]]:
    """A ledger built by the same plans the service uses, over advancing time."""
    now = NOW
    entries: list[Entry] = []
    charged: list[str] = []
    instants = [now]
    for step in range(draw(st.integers(1, 30))):
        now += draw(st.integers(0, 3 * DAY_MS))
        op = draw(
            st.sampled_from(
                ["topup", "voucher", "card", "charge", "charge", "refund", "settle", "invoice",
                 "expire"]
            )
        )  # fmt: skip
        if op == "topup":
            entries += topup(draw(st.integers(1, 500_000)), now)
        elif op == "voucher":
            never = draw(st.booleans())
            expires = None if never else now + draw(st.integers(1, 4 * DAY_MS))
            if expires is not None:
                instants += [expires - 1, expires]
            entries += grant_voucher(draw(st.integers(1, 300_000)), now, f"v{step}", expires)
        elif op == "card":
            new = card_purchase(draw(st.sampled_from(CARD_FACE_VALUES)), now, f"c{step}")
            entries += new
            assert new[0].expires_at is not None
            instants += [new[0].expires_at - 1, new[0].expires_at]
        elif op == "charge":
            mid = f"msg_{step}"
            try:
                entries += plan_charge(
                    balances(entries, now),
                    draw(st.integers(1, 200_000)),
                    international=draw(st.booleans()),
                    now=now,
                    ref=mid,
                    overdraft=draw(st.booleans()),
                )
                charged.append(mid)
            except InsufficientFunds:
                pass
        elif op == "refund" and charged:
            mid = charged.pop(draw(st.integers(0, len(charged) - 1)))
            entries += plan_refund([e for e in entries if e.ref == mid], now, mid)
        elif op == "settle":
            entries.append(Entry(K.SETTLEMENT_ADJUSTMENT, draw(st.integers(0, 90_000)), "cash",
                                 now, "2026-11"))  # fmt: skip
        elif op == "invoice":
            entries.append(Entry(K.INVOICE, draw(st.integers(0, 90_000)), "invoice", now, "m"))
        elif op == "expire":
            entries += expire_entries(entries, now)
        instants.append(now)
    instants.append(now + 400 * DAY_MS)
    return entries, instants


@given(ledgers())
@settings(max_examples=300, deadline=None)
def test_balances_of_running_sums_equals_ledger_balances(
    case: tuple[list[Entry], list[int]],
) -> None:
    entries, instants = case
    pockets = apply_entries({}, entries)
    # Also as the store builds them: in several transactions.
    stepwise: dict[str, Pocket] = {}
    for i in range(0, len(entries), 3):
        stepwise = apply_entries(stepwise, entries[i : i + 3])
    assert stepwise == pockets
    for t in instants:
        assert balances_of(pockets.values(), t) == balances(entries, t), t


def test_apply_entries_keeps_the_grant_expiry_and_sums() -> None:
    grant = grant_voucher(100_000, NOW, "v", NOW + DAY_MS)
    spend = Entry(K.VOUCHER_SPEND, -30_000, "voucher:v", NOW, "m1", NOW + DAY_MS)
    out = apply_entries({}, [*grant, spend, *topup(5, NOW)])
    assert out == {"voucher:v": Pocket("voucher:v", 70_000, NOW + DAY_MS), "cash": cash(5)}
    start = {"cash": cash(10)}
    again = apply_entries(start, [Entry(K.CHARGE, -4, "cash", NOW)])
    assert again == {"cash": cash(6)} and start == {"cash": cash(10)}  # input not mutated


def test_balances_of_skips_the_invoice_pocket() -> None:
    bal = balances_of([cash(5), Pocket("invoice", 1_000_000)], NOW)
    assert (bal.cash, bal.available_domestic) == (5, 5)


# ==== refund_due ==================================================================================

STATES = ("queued", "sent", "delivered", "failed", "expired", "unknown")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("submitted", [0, 1, 3])
def test_refund_due_truth_table(state: str, submitted: int) -> None:
    assert refund_due(None, state, submitted) is False  # never charged
    assert refund_due(DOMESTIC, state, submitted) is (state in ("failed", "expired"))
    intl = state in ("failed", "expired", "unknown", "delivered") and submitted == 0
    assert refund_due("+1", state, submitted) is intl
    assert refund_due("+44", state, submitted) is intl


def test_refund_due_domestic_cases_by_name() -> None:
    assert refund_due("D", "failed", 1)  # receipt says undeliverable: not billed
    assert refund_due("D", "expired", 0)  # never sent
    assert not refund_due("D", "delivered", 1)
    assert not refund_due("D", "unknown", 1)  # no receipt within 72 h: billed
    assert refund_due("+1", "failed", 0)  # the SMSC refused every part
    assert not refund_due("+1", "failed", 1)  # submitted, then failed: billed


# ==== the daily-quota day and the time to local midnight ==========================================


def test_day_key_and_midnight_in_shanghai() -> None:
    last = utc(2026, 3, 10, 15, 59, 59)  # 23:59:59 CST
    assert day_key(last, SH) == "2026-03-10"
    assert seconds_to_midnight(last, SH) == 1.0
    assert day_key(last + 999, SH) == "2026-03-10"
    assert seconds_to_midnight(last + 500, SH) == 1.0  # half a second: still at least one
    first = utc(2026, 3, 10, 16, 0, 0)
    assert day_key(first, SH) == "2026-03-11"
    assert seconds_to_midnight(first, SH) == 86_400.0
    assert day_key(first, "UTC") == "2026-03-10"
    assert seconds_to_midnight(first, "UTC") == 8 * 3600.0
    assert seconds_to_midnight(utc(2026, 3, 10, 4, 0, 0, ms=250), SH) == 12 * 3600 - 0.25


def test_midnight_on_the_short_day_in_berlin() -> None:
    tz = "Europe/Berlin"  # 2026-03-29 02:00 CET -> 03:00 CEST: a 23-hour day
    start = at(tz, 2026, 3, 29, 0, 0)
    assert day_key(start, tz) == "2026-03-29" and day_key(start - 1, tz) == "2026-03-28"
    assert seconds_to_midnight(start, tz) == 23 * 3600.0
    assert seconds_to_midnight(at(tz, 2026, 3, 29, 0, 30), tz) == 22.5 * 3600
    assert seconds_to_midnight(at(tz, 2026, 3, 29, 4, 0), tz) == 20 * 3600.0
    assert seconds_to_midnight(at(tz, 2026, 3, 28, 2, 30), tz) == 21.5 * 3600


def test_midnight_on_the_long_day_in_berlin() -> None:
    tz = "Europe/Berlin"  # 2026-10-25 03:00 CEST -> 02:00 CET: a 25-hour day
    start = at(tz, 2026, 10, 25, 0, 0)
    assert seconds_to_midnight(start, tz) == 25 * 3600.0
    assert seconds_to_midnight(at(tz, 2026, 10, 25, 2, 30, fold=0), tz) == 22.5 * 3600
    assert seconds_to_midnight(at(tz, 2026, 10, 25, 2, 30, fold=1), tz) == 21.5 * 3600
    assert day_key(at(tz, 2026, 10, 25, 23, 59, 59), tz) == "2026-10-25"
    assert day_key(at(tz, 2026, 10, 26, 0, 0), tz) == "2026-10-26"


def test_midnight_that_does_not_exist() -> None:
    tz = "America/Santiago"  # 2026-09-06 00:00 -04 -> 01:00 -03: the day starts at 01:00
    before = utc(2026, 9, 6, 3, 0, 0)  # 23:00 -04 on the 5th
    assert day_key(before, tz) == "2026-09-05"
    assert seconds_to_midnight(before, tz) == 3600.0
    day_start = utc(2026, 9, 6, 4, 0, 0)  # 01:00 -03
    assert day_key(day_start, tz) == "2026-09-06" and day_key(day_start - 1, tz) == "2026-09-05"
    assert seconds_to_midnight(day_start, tz) == 23 * 3600.0


def test_midnight_after_a_repeated_hour() -> None:
    tz = "America/Santiago"  # 2026-04-05 00:00 -03 -> 04-04 23:00 -04: 23:xx happens twice
    first = utc(2026, 4, 5, 2, 30, 0)  # 23:30 -03
    second = utc(2026, 4, 5, 3, 30, 0)  # 23:30 -04
    assert day_key(first, tz) == day_key(second, tz) == "2026-04-04"
    assert seconds_to_midnight(first, tz) == 5400.0
    assert seconds_to_midnight(second, tz) == 1800.0


@given(
    st.integers(utc(2000, 1, 1), utc(2040, 1, 1)),
    st.sampled_from(
        [
            SH,
            "Europe/Berlin",
            "America/New_York",
            "America/Santiago",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
            "UTC",
        ]
    ),
)
@settings(max_examples=500, deadline=None)
def test_seconds_to_midnight_lands_on_the_next_day(now: int, tz: str) -> None:
    wait = seconds_to_midnight(now, tz)
    assert 1.0 <= wait <= 25 * 3600
    nxt = now + round(wait * 1000)
    if wait > 1.0:
        assert day_key(nxt, tz) != day_key(now, tz)
        assert day_key(nxt - 1000, tz) == day_key(now, tz)


def test_low_balance_event_body() -> None:
    import json

    body = json.loads(adm.low_balance_event("acc_1", (120_000, 75_000), NOW))
    assert body == {
        "event": "balance.low",
        "account": "acc_1",
        "available_micro": 75_000,
        "available": "0.075",
        "previous_micro": 120_000,
        "at": NOW,
    }


# -- facts_after: what an earlier accept of the same statement wrote -------------------------------


def _sent(to: str, at_ms: int, sign: str | None = "Acme", template: str | None = None,
          kind: str | None = None) -> adm.Sent:  # fmt: skip
    return adm.Sent(to, at_ms, sign, template, kind)


@pytest.mark.parametrize(
    ("fr_kind", "fr_template", "sent", "counts"),
    [
        ("verification", None, _sent(CN1, 1, template="T1", kind="verification"), True),
        ("verification", None, _sent(CN1, 1, template="T1", kind="notification"), False),
        ("verification", None, _sent(CN1, 1, sign="Beta", kind="verification"), False),
        ("template", "T1", _sent(CN1, 1, template="T1", kind="notification"), True),
        ("template", "T1", _sent(CN1, 1, template="T2"), False),
        ("template", None, _sent(CN1, 1), False),  # SQL's template = NULL is never true
        ("raw", None, _sent(CN1, 1), True),
        ("raw", None, _sent(CN1, 1, template="T1"), False),
        ("raw", None, _sent(CN1, 1, sign=None), False),
    ],
)
def test_counts_against_is_the_history_query_condition(
    fr_kind: str, fr_template: str | None, sent: adm.Sent, counts: bool
) -> None:
    fr = FrequencyRule(fr_kind, "Acme", fr_template, VERIFY, "UTC", (CN1,))
    assert adm.counts_against(fr, "Acme", sent) is counts


def test_facts_after_moves_what_an_accept_writes_and_nothing_else() -> None:
    now = at("UTC", 2024, 3, 1, 12, 0)
    fr = FrequencyRule("raw", "Acme", None, VERIFY, "UTC", (CN1, CN2))
    rules = Rules(sign_name="Acme", frequency=fr, charges=(Priced("m9", 100, False),),
                  billing=True)  # fmt: skip
    facts = Facts(
        recipients=(CN1,),
        opted_out=frozenset({CN3}),
        history={CN1: [now - 5 * MINUTE_MS], CN2: []},
        day_count=7,
        pockets=[Pocket("voucher:v1", 50, now + DAY_MS), Pocket("cash", 1000)],
    )
    plan = Plan(
        (("m1", Entry(K.VOUCHER_SPEND, -50, "voucher:v1", now, "m1")),
         ("m1", Entry(K.CHARGE, -50, "cash", now, "m1"))),
        None,
        day_key(now, "UTC"),
    )  # fmt: skip
    written = [_sent(CN1, now - 1), _sent(CN3, now - 1), _sent(CN2, now - DAY_MS)]
    got = adm.facts_after(facts, plan, 3, written, rules, now)
    assert got.day_count == 10
    assert got.pockets == [Pocket("cash", 950), Pocket("voucher:v1", 0, now + DAY_MS)]
    # CN3 is not limited here; CN2's message is 24 h old exactly: out of the window.
    assert got.history == {CN1: [now - 5 * MINUTE_MS, now - 1], CN2: []}
    assert got.opted_out == facts.opted_out and got.recipients == facts.recipients
    # The next day counts from zero: the earlier accept's day is not today's.
    tomorrow = adm.facts_after(facts, plan, 3, [], rules, now + DAY_MS)
    assert tomorrow.day_count == 7
    # Without billing the pockets were not read: they stay as read.
    unbilled = adm.facts_after(facts, plan, 3, [], replace(rules, billing=False), now)
    assert unbilled.pockets == facts.pockets


def test_facts_after_keeps_an_expiry_as_the_stores_upsert_does() -> None:
    now = 1_700_000_000_000
    plan = Plan(
        (("m", Entry(K.VOUCHER_REFUND, 5, "voucher:new", now, "m")),
         ("m", Entry(K.VOUCHER_REFUND, 5, "voucher:new", now, "m", expires_at=now + 9)),
         ("m", Entry(K.REFUND, 5, "cash", now, "m", expires_at=now + 7))),
        None,
        day_key(now, "UTC"),
    )  # fmt: skip
    rules = Rules(charges=(Priced("m", 1, False),), billing=True)
    got = adm.facts_after(Facts(recipients=(CN1,), pockets=[Pocket("cash", 1)]), plan, 1, [],
                          rules, now)  # fmt: skip
    assert got.pockets == [Pocket("cash", 6, now + 7), Pocket("voucher:new", 10, now + 9)]


# ==== closing an account ==========================================================================


def test_close_plan_empties_every_pocket_that_holds_money() -> None:
    pockets = [
        cash(700_000),
        voucher("live", 50_000, None),
        voucher("gone", 30_000, NOW - 5),  # expired, not swept yet: written off at its expiry
        voucher("spent", 0, None),
        card("c", 999_000_000, NOW + DAY_MS),
        Pocket("invoice", 12_345),  # a record of what a postpaid month owes: no money
    ]
    entries = adm.close_plan(pockets, NOW)
    got = sorted((str(e.kind), e.amount, e.pocket, e.at, e.ref) for e in entries)
    assert got == [
        ("card_void", -999_000_000, "card:c", NOW, "c"),
        ("closed", -700_000, "cash", NOW, None),
        ("voucher_expire", -30_000, "voucher:gone", NOW - 5, "gone"),
        ("voucher_void", -50_000, "voucher:live", NOW, "live"),
    ]
    after = apply_entries({p.pocket: p for p in pockets}, entries)
    assert {k: p.amount for k, p in after.items() if p.amount} == {"invoice": 12_345}
    assert adm.owed_at_close(entries) == (700_000, 999_000_000 + 30_000 + 50_000)
    assert adm.close_plan(list(after.values()), NOW) == []  # a repeat writes nothing


def test_close_plan_keeps_a_debt() -> None:
    assert adm.close_plan([cash(-5_000)], NOW) == []
