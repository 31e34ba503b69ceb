"""bridge/domain/phone.py: E.164 normalisation per country plan, and masking."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.phone import PLANS, PhoneError, mask, normalize

E164 = re.compile(r"\+[1-9][0-9]{6,14}")

# One national mobile per plan, with its trunk prefix where the plan has one.
NATIONAL = [
    ("CN", "13800138000", "+8613800138000"),
    ("CN", "19912345678", "+8619912345678"),
    ("HK", "91234567", "+85291234567"),
    ("HK", "51234567", "+85251234567"),
    ("MO", "61234567", "+85361234567"),
    ("TW", "0912345678", "+886912345678"),
    ("TW", "912345678", "+886912345678"),
    ("SG", "81234567", "+6581234567"),
    ("SG", "91234567", "+6591234567"),
    ("US", "2025550123", "+12025550123"),
    ("US", "12025550123", "+12025550123"),
    ("CA", "4165550123", "+14165550123"),
    ("CA", "1 416 555 0123", "+14165550123"),
    ("GB", "07700900123", "+447700900123"),
    ("GB", "7700900123", "+447700900123"),
    ("DE", "01512345678", "+491512345678"),
    ("DE", "015123456789", "+4915123456789"),
    ("FR", "0612345678", "+33612345678"),
    ("FR", "0712345678", "+33712345678"),
    ("IN", "09876543210", "+919876543210"),
    ("IN", "9876543210", "+919876543210"),
    ("JP", "090-1234-5678", "+819012345678"),
    ("JP", "08012345678", "+818012345678"),
    ("AU", "0412345678", "+61412345678"),
    ("AU", "412345678", "+61412345678"),
]


@pytest.mark.parametrize(("country", "raw", "expected"), NATIONAL)
def test_national_numbers_per_plan(country, raw, expected):
    assert normalize(raw, country) == expected
    assert normalize(raw, country.lower()) == expected


def test_every_plan_is_covered():
    assert {c for c, _, _ in NATIONAL} == set(PLANS)


@pytest.mark.parametrize(
    ("country", "raw"),
    [
        ("CN", "12345678901"),  # 12x is not a mobile range
        ("CN", "1380013800"),  # one digit short
        ("CN", "138001380001"),  # one digit long
        ("CN", "01012345678"),  # a Beijing landline
        ("HK", "21234567"),  # a fixed line
        ("MO", "71234567"),
        ("TW", "0212345678"),
        ("SG", "61234567"),
        ("US", "0125550123"),  # area codes do not start with 0 or 1
        ("US", "2021550123"),  # nor exchange codes
        ("GB", "02079460000"),  # London landline
        ("DE", "0301234567"),
        ("FR", "0112345678"),
        ("IN", "5876543210"),
        ("JP", "0312345678"),
        ("AU", "0212345678"),
    ],
)
def test_ambiguous_or_non_mobile_national_numbers_are_refused(country, raw):
    with pytest.raises(PhoneError) as err:
        normalize(raw, country)
    assert err.value.message == (
        f"{raw!r} is not an unambiguous {country} mobile number; send E.164"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "+8613800138000",
        "+86 138 0013 8000",
        "+86-138-0013-8000",
        "+86 (138) 0013.8000",
        "\t+86 138\u00a00013 8000\n",  # tab, no-break space, newline
        "008613800138000",
        "0086 138 0013 8000",
    ],
)
def test_international_forms_and_separators(raw):
    assert normalize(raw) == "+8613800138000"
    assert normalize(raw, "GB") == "+8613800138000"  # a country code wins over the default


@pytest.mark.parametrize("digits", [7, 15])
def test_e164_length_bounds_are_accepted(digits):
    number = "+1" + "2" * (digits - 1)
    assert normalize(number) == number


@pytest.mark.parametrize(
    ("raw", "country", "message"),
    [
        ("", None, "phone number is empty"),
        ("   ", "CN", "phone number is empty"),
        ("+123456", None, "'+123456' is not a valid E.164 number (+ then 7 to 15 digits)"),
        (
            "+1234567890123456",
            None,
            "'+1234567890123456' is not a valid E.164 number (+ then 7 to 15 digits)",
        ),
        ("+0123456789", None, "'+0123456789' is not a valid E.164 number (+ then 7 to 15 digits)"),
        (
            "+86138abc8000",
            None,
            "'+86138abc8000' is not a valid E.164 number (+ then 7 to 15 digits)",
        ),
        (
            "++8613800138000",
            None,
            "'++8613800138000' is not a valid E.164 number (+ then 7 to 15 digits)",
        ),
        ("0000", None, "'0000' is not a valid E.164 number (+ then 7 to 15 digits)"),
        ("138abc", "CN", "'138abc' contains characters that are not digits"),
        ("86+13800138000", "CN", "'86+13800138000' contains characters that are not digits"),
        (
            "13800138000",
            None,
            "'13800138000' has no country code; send E.164 (+country code) or set the account's "
            "default country",
        ),
        (
            "13800138000",
            "ZZ",
            "'13800138000' has no country code and national numbers of ZZ are not supported; "
            "send E.164",
        ),
    ],
)
def test_refusals_say_why(raw, country, message):
    with pytest.raises(PhoneError) as err:
        normalize(raw, country)
    assert err.value.message == message
    assert str(err.value) == message


@pytest.mark.parametrize(
    "raw",
    [
        "+86١٣٨٠٠١٣٨٠٠٠",  # Arabic-Indic digits
        "+86１３８００１３８０００",  # fullwidth digits
        "+8613800138⁰⁰⁰",  # superscripts
        "１３８００１３８０００",
    ],
)
def test_only_ascii_digits_are_digits(raw):
    """`\\d` and str.isdigit() accept these; an SMSC cannot route them."""
    with pytest.raises(PhoneError):
        normalize(raw, "CN")


@pytest.mark.parametrize(
    ("e164", "masked"),
    [
        ("+8613800138000", "+86*******8000"),
        ("+447700900123", "+44******0123"),
        ("+12025550123", "+12*****0123"),
        ("+1234567", "+12*4567"),  # the shortest E.164
        ("+12345678", "+12**5678"),
        ("+123456", "*******"),  # not E.164: nothing shown
    ],
)
def test_mask(e164, masked):
    assert mask(e164) == masked
    assert len(mask(e164)) == len(e164)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(st.text(max_size=25), st.text("+0123456789 -().", max_size=20)),
    country=st.one_of(st.none(), st.sampled_from([*PLANS, "ZZ", "cn"])),
)
def test_any_input_gives_ascii_e164_or_a_phone_error(raw, country):
    try:
        out = normalize(raw, country)
    except PhoneError as exc:
        assert exc.message
        return
    assert E164.fullmatch(out), out
    assert normalize(out) == out  # idempotent
    assert normalize(out, country) == out
    masked = mask(out)
    assert masked[-4:] == out[-4:] and len(masked) == len(out)


def test_is_national_mobile_by_the_country_plan() -> None:
    from bridge.domain.phone import is_national_mobile

    assert is_national_mobile("13800138000", "+86")
    assert not is_national_mobile("8613800138000", "+86")
    assert not is_national_mobile("12800138000", "+86")  # 12x is no Chinese mobile range
    assert is_national_mobile("7700900123", "+44")
    assert not is_national_mobile("07700900123", "+44")  # the trunk 0 is read apart
    assert is_national_mobile("2125550123", "+1")
    assert not is_national_mobile("13800138000", "+999")  # no plan: never
