"""An MO's source number as the inbound path normalises it."""

from __future__ import annotations

import pytest

from bridge.pipeline.inbound import _e164


def test_a_national_source_address_is_not_turned_into_another_countrys_number() -> None:
    """deliver_sm source_addr_ton 2 (national) "13800138000" is a Chinese mobile in national
    form. _e164 prefixes "+" to any digit string of 10+ digits whatever the TON, giving
    "+13800138000": a North American number. The MO is then matched against nobody (the
    account sent to +8613800138000), so it is unattributed and a "TD" reply is never honoured.
    A national number must not be read as international (convert with a configured country, or
    keep it as received)."""
    assert _e164("13800138000", 2) != "+13800138000"


def test_international_and_plus_forms_still_normalise() -> None:
    """The cases _e164 gets right (guard for the fix)."""
    assert _e164("8613800138000", 1) == "+8613800138000"
    assert _e164("+8613800138000", 0) == "+8613800138000"
    assert _e164("10086", 0) == "10086"


@pytest.mark.parametrize(
    ("addr", "ton", "expected"),
    [
        ("13800138000", 2, "+8613800138000"),  # national, no trunk 0 (China's mobiles)
        ("013800138000", 0, "+8613800138000"),  # a trunk 0, TON unknown
        ("8613800138000", 1, "+8613800138000"),  # international stays as it was
        ("008613800138000", 0, "+8613800138000"),
        ("+447700900123", 2, "+447700900123"),  # a "+" is international whatever the TON
        ("10086", 2, "+8610086"),
        ("ACME", 5, "ACME"),  # alphanumeric: untouched
        ("000", 2, "000"),  # nothing but zeros: no number to read
    ],
)
def test_national_sources_are_read_in_the_smscs_country(addr: str, ton: int, expected: str) -> None:
    assert _e164(addr, ton, "+86") == expected
