"""The addresses an erasure looks for among the waiting parts of long replies
(phone.mo_source_forms) are the ones the inbound reading (inbound._e164) turns into the number,
and reply_destinations mirrors how a reply's address is matched to a message's sender."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.domain.phone import mo_source_forms, mo_source_numbers, reply_destinations
from bridge.pipeline.inbound import _e164

E164 = st.from_regex(r"\+[1-9][0-9]{9,13}", fullmatch=True)


@given(E164, st.sampled_from(["+86", "+44", "+1", "+852"]))
def test_every_form_reads_back_as_the_number(number: str, prefix: str) -> None:
    assume(number[len(prefix) :].strip("0"))  # no subscriber number is all zeros
    # Nor, in these countries, begins with 0: that is their trunk prefix (hypothesis found
    # +1 000000001, whose national form 0000000001 reads back as another number).
    assume(not (number.startswith(prefix) and number[len(prefix)] == "0"))
    forms = mo_source_forms(number, [prefix])
    # Each form with a TON an SMSC sends it with: international (1), unknown (0), national (2).
    for form in forms:
        read = {_e164(form, ton, prefix) for ton in (0, 1, 2)}
        assert number in read, (form, read)
    assert forms[:3] == (number, number[1:], "00" + number[1:])
    national = number.startswith(prefix)
    assert len(forms) == (5 if national else 3)


def test_national_forms_only_for_the_prefixes_the_smscs_use() -> None:
    assert mo_source_forms("+8613800138000") == (
        "+8613800138000",
        "8613800138000",
        "008613800138000",
    )
    assert mo_source_forms("+8613800138000", ["+86", "+44", "+86"])[3:] == (
        "013800138000",
        "13800138000",
    )


def test_reply_destinations() -> None:
    assert reply_destinations(["1069", "+44700", "BRAND"]) == (
        "1069",
        "+1069",
        "44700",
        "+44700",
        "BRAND",
    )
    assert reply_destinations(["1069", None]) is None  # the SMSC's default source: any
    assert reply_destinations([]) == ()


PREFIXES = st.lists(st.sampled_from(["+86", "+44", "+1", "+852", "+8", "44"]), max_size=4)


@given(E164, PREFIXES)
def test_mo_source_numbers_finds_the_number_from_each_of_its_forms(
    number: str, prefixes: list[str]
) -> None:
    """An account's close drops the waiting parts of every number it wrote to by reading the
    parts' sources back into numbers: each form must lead back to its number."""
    for form in mo_source_forms(number, prefixes):
        assert number in mo_source_numbers(form, prefixes), form


@given(
    st.one_of(E164, st.from_regex(r"(\+|00|0)?[0-9]{1,16}|[A-Za-z]{1,11}", fullmatch=True)),
    PREFIXES,
)
def test_mo_source_numbers_names_only_numbers_with_that_form(
    source: str, prefixes: list[str]
) -> None:
    for number in mo_source_numbers(source, prefixes):
        assert number[:1] == "+" and number[1:].isdigit()
        assert source in mo_source_forms(number, prefixes), number


def test_mo_source_numbers_examples() -> None:
    assert mo_source_numbers("8613800138000") == ("+8613800138000",)
    assert mo_source_numbers("008613800138000") == ("+008613800138000", "+8613800138000")
    # Without its trunk 0, or a national number that begins with 0: the store keeps both.
    assert mo_source_numbers("013800138000", ["+86"]) == (
        "+013800138000",
        "+86013800138000",
        "+8613800138000",
    )
    assert mo_source_numbers("13800138000", ["+86", "+44"]) == (
        "+13800138000",
        "+8613800138000",
        "+4413800138000",
    )
    assert mo_source_numbers("BRAND", ["+86"]) == ()
